//! The SVID cache: an X509-SVID and a WIT-SVID for every workload entry, with
//! keys generated here, minted in batches and rotated at half their life (with
//! jitter, so a fleet does not rotate in step); and the snapshot the Workload
//! API serves.

pub mod jwt;
pub mod wit;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::issuer as pb;
use tokio::sync::watch;
use workload_api::id::parse_trust_domain;
use workload_api::selector::Selector;
use workload_api::source::{Identity, Snapshot, X509Material};

use crate::keys::new_key_and_csr;
use crate::node::Node;
use crate::sync::Entries;

/// CSRs per signing call.
const BATCH: usize = 500;
/// The longest wait between minting attempts while the issuer is unreachable.
const MAX_RETRY: Duration = Duration::from_secs(5);
/// Rotation happens between 40% and 50% of an SVID's life.
const JITTER_PERCENT: u64 = 10;

/// What the cache shows about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub svids: usize,
    pub next_rotation: Option<SystemTime>,
    pub last_error: Option<String>,
}

struct Minted {
    revision: i64,
    material: Arc<X509Material>,
    rotate_at: SystemTime,
}

/// Whether an entry is a workload's: node alias entries (selected by the
/// agent's own SPIFFE ID) identify nodes, not workloads.
fn is_workload_entry(entry: &pb::Entry) -> bool {
    !entry.selectors.is_empty() && entry.selectors.iter().all(|s| s.r#type != "spiffe_id")
}

/// When to replace an SVID received at `received`: between 40% and 50% of the
/// life it had left then. (Its notBefore is backdated for clock skew, so the
/// receipt time is the honest start.)
fn rotate_at(received: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after.duration_since(received).unwrap_or_default();
    let jitter = u64::from(crate::jitter_byte()) * JITTER_PERCENT / 255;
    received + life * (50 - jitter as u32) / 100
}

/// Keeps SVIDs fresh for the current entries and publishes snapshots.
pub async fn run(
    node: Arc<Node>,
    mut entries: watch::Receiver<Entries>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    status: watch::Sender<Status>,
    mut stop: watch::Receiver<bool>,
) {
    let mut minted: HashMap<String, Minted> = HashMap::new();
    let mut wits: HashMap<String, wit::MintedWit> = HashMap::new();
    let mut bundles = node.subscribe_bundle();
    let mut retry = Duration::from_secs(1);
    loop {
        let current = entries.borrow_and_update().clone();
        let bundle = bundles.borrow_and_update().clone();
        let now = SystemTime::now();
        minted.retain(|id, _| current.iter().any(|e| &e.id == id));
        wits.retain(|id, _| current.iter().any(|e| &e.id == id));
        let due = |e: &&pb::Entry, held: Option<(i64, SystemTime)>| match held {
            None => true,
            Some((revision, rotate_at)) => revision != e.revision || now >= rotate_at,
        };
        let workloads: Vec<&pb::Entry> = current.iter().filter(|e| is_workload_entry(e)).collect();
        let due_x509: Vec<&pb::Entry> = workloads
            .iter()
            .copied()
            .filter(|e| due(e, minted.get(&e.id).map(|m| (m.revision, m.rotate_at))))
            .collect();
        let due_wit: Vec<&pb::Entry> = workloads
            .iter()
            .copied()
            .filter(|e| due(e, wits.get(&e.id).map(|m| (m.revision, m.rotate_at))))
            .collect();
        let mut failure = None;
        for chunk in due_x509.chunks(BATCH) {
            if let Err(error) = mint(&node, chunk, &mut minted).await {
                failure = Some(error);
                break;
            }
        }
        if failure.is_none() {
            for chunk in due_wit.chunks(BATCH) {
                if let Err(error) = wit::mint(&node, chunk, &mut wits).await {
                    failure = Some(format!("WIT-SVIDs: {error}"));
                    break;
                }
            }
        }
        let identities = workloads
            .iter()
            .map(|e| identity(e, minted.get(&e.id), wits.get(&e.id)))
            .collect();
        snapshots.send_if_modified(|snapshot| {
            let next = Snapshot {
                bundle: bundle.clone(),
                federated: Default::default(),
                identities,
            };
            if same(snapshot, &next) {
                false
            } else {
                *snapshot = Arc::new(next);
                true
            }
        });
        let next_rotation = minted
            .values()
            .map(|m| m.rotate_at)
            .chain(wits.values().map(|m| m.rotate_at))
            .min();
        status.send_replace(Status {
            svids: minted.len(),
            next_rotation,
            last_error: failure.clone(),
        });
        let wait = match &failure {
            Some(error) => {
                tracing::warn!(%error, "minting SVIDs failed; cached SVIDs stay in use");
                let wait = crate::with_jitter(retry);
                retry = (retry * 2).min(MAX_RETRY);
                wait
            }
            None => {
                retry = Duration::from_secs(1);
                next_rotation
                    .and_then(|t| t.duration_since(SystemTime::now()).ok())
                    .unwrap_or(Duration::from_secs(3600))
            }
        };
        tokio::select! {
            changed = entries.changed() => if changed.is_err() { return },
            changed = bundles.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Snapshots differ when any identity, SVID or the bundle differs.
fn same(a: &Snapshot, b: &Snapshot) -> bool {
    Arc::ptr_eq(&a.bundle, &b.bundle)
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
) -> Result<(), String> {
    let mut keys = HashMap::new();
    let mut params = Vec::with_capacity(entries.len());
    for entry in entries {
        let (key, csr) = new_key_and_csr(Some(&entry.spiffe_id))?;
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
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner()
        .results;
    let received = SystemTime::now();
    settle(keys, results, |result, key, revision| {
        let leaf = workload_api::bundle::split_der_concat(&result.cert_chain)
            .ok()
            .and_then(|chain| {
                chain
                    .first()
                    .and_then(|leaf| workload_api::x509svid::check_leaf(leaf).ok())
            })
            .ok_or("issuer returned an invalid SVID")?;
        tracing::debug!(entry_id = %result.entry_id, spiffe_id = %leaf.spiffe_id, "X509-SVID minted");
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
    mut pending: HashMap<String, (K, i64)>,
    results: Vec<R>,
    mut accept: impl FnMut(R, K, i64) -> Result<(), &'static str>,
) -> Result<(), String> {
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
        Err(failed.join("; "))
    }
}
