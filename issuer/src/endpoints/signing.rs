//! The agent API's signing of workload credentials: X509-SVIDs (their
//! serials derived from reserved counters for owner-bound entries, see
//! [`crate::serials`]), WIT-SVIDs and their confirmation keys, and the owner
//! binding each entry's credentials carry, derived once per call. The RPC
//! handlers in [`super::agent`] authenticate and authorize; this signs.

use std::collections::HashMap;
use std::time::Duration;

use proto::issuer as pb;
use tonic::Status;
use workload_api::events::{Event, EventKind};
use workload_api::id::parse_spiffe_id;
use workload_api::owner::OwnerBinding;

use super::agent::AgentService;
use crate::ca::{SerialCounter, SvidSubject};
use crate::clock::unix_secs;
use crate::csr::{self, SubjectKey};
use crate::store::Entry;

impl AgentService {
    /// Signs a batch of X509-SVIDs for authorised `entries`, on behalf of
    /// `agent`. No SVID leaves before the log holds its issuance: if the
    /// events cannot be stored, every SVID of the batch is withheld.
    pub(super) async fn sign_x509_batch(
        &self,
        agent: &str,
        entries: &HashMap<String, Entry>,
        params: &[pb::X509SvidParams],
    ) -> Vec<pb::X509SvidResult> {
        let mut counters = self.reserve_counters(entries, params).await;
        let mut bindings = Bindings::default();
        let mut events = Vec::new();
        let mut results: Vec<pb::X509SvidResult> = params
            .iter()
            .map(|p| self.sign_one(agent, entries, &mut bindings, &mut counters, p, &mut events))
            .collect();
        match self.record(&events).await {
            Ok(()) => crate::metrics::issued("x509", events.len()),
            Err(status) => {
                for result in results.iter_mut().filter(|r| r.code == 0) {
                    *result = failed_x509(&result.entry_id, status.clone());
                }
            }
        }
        results
    }

    /// Signs a batch of WIT-SVIDs for authorised `entries`, on behalf of
    /// `agent`, withheld unless their issuance is logged.
    pub(super) async fn sign_wit_batch(
        &self,
        agent: &str,
        entries: &HashMap<String, Entry>,
        params: &[pb::WitSvidParams],
    ) -> Vec<pb::WitSvidResult> {
        let mut bindings = Bindings::default();
        let mut events = Vec::new();
        let mut results: Vec<pb::WitSvidResult> = params
            .iter()
            .map(|p| self.sign_one_wit(agent, entries, &mut bindings, p, &mut events))
            .collect();
        let recorded = self.record(&events).await;
        if recorded.is_ok() {
            crate::metrics::issued("wit", events.len());
        }
        if let Err(status) = recorded {
            for result in results.iter_mut().filter(|r| r.code == 0) {
                *result = pb::WitSvidResult {
                    code: status.code() as i32,
                    message: status.message().to_owned(),
                    entry_id: std::mem::take(&mut result.entry_id),
                    token: String::new(),
                    expires_at: 0,
                };
            }
        }
        results
    }

    /// Appends issuance events; UNAVAILABLE when the log cannot take them.
    pub(super) async fn record(&self, events: &[Event]) -> Result<(), Status> {
        self.state.events.append(events).await.map_err(|e| {
            tracing::error!(error = %e, "event log append failed; credentials withheld");
            Status::unavailable(format!(
                "{e}; credentials are withheld until it is logged, retry"
            ))
        })
    }

    /// An issuance event for `entry`, requested by `agent`.
    fn issued(&self, kind: EventKind, agent: &str, entry: &Entry, expires_at: i64) -> Event {
        self.state
            .events
            .event(kind, self.now())
            .subject(entry.fields.spiffe_id.clone())
            .owner(
                entry
                    .fields
                    .owner
                    .as_ref()
                    .map_or("", |o| o.owner_id.as_str()),
            )
            .entry(entry.id.clone())
            .detail("agent", agent)
            .detail("expires_at", expires_at)
    }

    /// Signs a JWT-SVID for `entry` and `audience` (already checked).
    pub(super) async fn sign_jwt(
        &self,
        agent: &str,
        entry: &Entry,
        audience: &[String],
    ) -> Result<pb::SignJwtSvidResponse, Status> {
        let spiffe_id = parse_spiffe_id(&entry.fields.spiffe_id)
            .map_err(|e| Status::internal(format!("stored entry is invalid: {e}")))?;
        let ttl = match entry.fields.jwt_svid_ttl {
            0 => self.state.config.default_jwt_svid_ttl,
            secs => Duration::from_secs(secs as u64),
        };
        let owner = owner_binding(entry)?;
        let signed = self
            .state
            .ca
            .sign_jwt_svid(&spiffe_id, audience, owner.as_ref(), ttl, self.now())
            .map_err(|e| {
                tracing::error!(error = %e, "JWT-SVID signing failed");
                Status::internal("signing failed")
            })?;
        let expires_at = unix_secs(signed.expires_at);
        let event = self
            .issued(EventKind::JwtSvidIssued, agent, entry, expires_at)
            .jti(signed.jti)
            .bounded_list("audience", audience);
        self.record(&[event]).await?;
        crate::metrics::issued("jwt", 1);
        Ok(pb::SignJwtSvidResponse {
            token: signed.token,
            expires_at,
        })
    }

    /// For each owner-bound entry a batch signs for, the first of as many
    /// serial counters as it asks (reserved in the store before any SVID
    /// carrying them leaves), or why none could be had.
    async fn reserve_counters(
        &self,
        entries: &HashMap<String, Entry>,
        params: &[pb::X509SvidParams],
    ) -> HashMap<String, Result<u64, Status>> {
        let mut wanted: HashMap<&str, (&str, u64)> = HashMap::new();
        for p in params {
            if let Some(owner) = entries
                .get(&p.entry_id)
                .and_then(|e| e.fields.owner.as_ref())
            {
                wanted.entry(&p.entry_id).or_insert((&owner.owner_id, 0)).1 += 1;
            }
        }
        let now = unix_secs(self.now());
        let mut counters = HashMap::with_capacity(wanted.len());
        for (entry_id, (owner_id, count)) in wanted {
            let first = self
                .state
                .serial_counters
                .take(&self.state.store, entry_id, owner_id, count, now)
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, entry_id, "reserving serial counters failed");
                    Status::unavailable("serial numbers could not be reserved; retry")
                });
            counters.insert(entry_id.to_owned(), first);
        }
        counters
    }

    fn sign_one_wit(
        &self,
        agent: &str,
        entries: &HashMap<String, Entry>,
        bindings: &mut Bindings,
        params: &pb::WitSvidParams,
        events: &mut Vec<Event>,
    ) -> pb::WitSvidResult {
        let fail = |status: Status| pb::WitSvidResult {
            code: status.code() as i32,
            message: status.message().to_owned(),
            entry_id: params.entry_id.clone(),
            token: String::new(),
            expires_at: 0,
        };
        let Some(entry) = entries.get(&params.entry_id) else {
            return fail(Status::permission_denied(format!(
                "entry {:?} does not exist or is not authorized for this agent",
                params.entry_id
            )));
        };
        let jwk = match confirmation_key(&params.public_jwk) {
            Ok(jwk) => jwk,
            Err(reason) => return fail(Status::invalid_argument(format!("public_jwk: {reason}"))),
        };
        let spiffe_id = match parse_spiffe_id(&entry.fields.spiffe_id) {
            Ok(id) => id,
            Err(e) => return fail(Status::internal(format!("stored entry is invalid: {e}"))),
        };
        let owner = match bindings.of(entry) {
            Ok(owner) => owner,
            Err(status) => return fail(status),
        };
        let ttl = self.state.config.default_wit_svid_ttl;
        let jkt = workload_api::jwk::PublicKey::from_jwk(&jwk)
            .expect("a confirmation key is made from a valid key")
            .thumbprint();
        match self
            .state
            .ca
            .sign_wit_svid(&spiffe_id, jwk, owner, ttl, self.now())
        {
            Ok(signed) => {
                let expires_at = unix_secs(signed.expires_at);
                events.push(
                    self.issued(EventKind::WitIssued, agent, entry, expires_at)
                        .jti(signed.jti)
                        .jkt(jkt),
                );
                pb::WitSvidResult {
                    code: 0,
                    message: String::new(),
                    entry_id: entry.id.clone(),
                    token: signed.token,
                    expires_at,
                }
            }
            Err(e) => {
                tracing::error!(error = %e, entry_id = %entry.id, "WIT-SVID signing failed");
                fail(Status::internal("signing failed"))
            }
        }
    }

    /// Signs one X509-SVID; an owner-bound entry's serial is derived from
    /// the next of the counters reserved for it in `counters`.
    fn sign_one(
        &self,
        agent: &str,
        entries: &HashMap<String, Entry>,
        bindings: &mut Bindings,
        counters: &mut HashMap<String, Result<u64, Status>>,
        params: &pb::X509SvidParams,
        events: &mut Vec<Event>,
    ) -> pb::X509SvidResult {
        let fail = |status: Status| failed_x509(&params.entry_id, status);
        let Some(entry) = entries.get(&params.entry_id) else {
            return fail(Status::permission_denied(format!(
                "entry {:?} does not exist or is not authorized for this agent",
                params.entry_id
            )));
        };
        let csr = match csr::verify(&params.csr) {
            Ok(csr) => csr,
            Err(e) => return fail(Status::invalid_argument(format!("csr: {e}"))),
        };
        match csr.uris.as_slice() {
            [uri] if *uri == entry.fields.spiffe_id => {}
            [] => {
                return fail(Status::invalid_argument(
                    "csr: no URI SAN; it must carry the entry's SPIFFE ID",
                ))
            }
            uris => {
                return fail(Status::permission_denied(format!(
                    "csr requests {uris:?} but entry {} is for {}",
                    entry.id, entry.fields.spiffe_id
                )))
            }
        }
        let spiffe_id = match parse_spiffe_id(&entry.fields.spiffe_id) {
            Ok(id) => id,
            Err(e) => return fail(Status::internal(format!("stored entry is invalid: {e}"))),
        };
        let ttl = match entry.fields.x509_svid_ttl {
            0 => self.state.config.default_x509_svid_ttl,
            secs => Duration::from_secs(secs as u64),
        };
        let owner = match bindings.of(entry) {
            Ok(owner) => owner,
            Err(status) => return fail(status),
        };
        // An owner-bound SVID's serial is derived, so it can be revoked,
        // whether or not it carries the extension.
        let counter = match (owner, counters.get_mut(&entry.id)) {
            (None, _) => None,
            (Some(_), Some(Ok(next))) => {
                *next += 1;
                Some(SerialCounter {
                    entry_id: &entry.id,
                    counter: *next - 1,
                })
            }
            (Some(_), Some(Err(status))) => return fail(status.clone()),
            (Some(_), None) => return fail(Status::internal("no serial counter was reserved")),
        };
        let subject = SvidSubject {
            key: &SubjectKey::new(&csr.public_key),
            spiffe_id: &spiffe_id,
            dns_names: &entry.fields.dns_names,
            owner: owner.filter(|_| self.state.config.x509_owner_extension),
            counter,
        };
        match self.state.ca.sign_x509_svid(subject, ttl, self.now()) {
            Ok(signed) => {
                let expires_at = unix_secs(signed.not_after);
                events.push(
                    self.issued(EventKind::X509SvidIssued, agent, entry, expires_at)
                        .serial(signed.serial_hex)
                        .jkt(csr.public_key.thumbprint())
                        .detail("authority", signed.authority_id),
                );
                pb::X509SvidResult {
                    code: 0,
                    message: String::new(),
                    entry_id: entry.id.clone(),
                    cert_chain: signed.chain.concat(),
                    expires_at,
                }
            }
            Err(e) => {
                tracing::error!(error = %e, entry_id = %entry.id, "X509-SVID signing failed");
                fail(Status::internal("signing failed"))
            }
        }
    }
}

/// A refused X509-SVID request.
fn failed_x509(entry_id: &str, status: Status) -> pb::X509SvidResult {
    pb::X509SvidResult {
        code: status.code() as i32,
        message: status.message().to_owned(),
        entry_id: entry_id.to_owned(),
        cert_chain: Vec::new(),
        expires_at: 0,
    }
}

/// The owner bindings of the entries one call signs for, each derived once
/// however many credentials the call asks for.
#[derive(Default)]
struct Bindings(HashMap<String, Result<Option<OwnerBinding>, Status>>);

impl Bindings {
    fn of(&mut self, entry: &Entry) -> Result<Option<&OwnerBinding>, Status> {
        if !self.0.contains_key(&entry.id) {
            self.0.insert(entry.id.clone(), owner_binding(entry));
        }
        match &self.0[&entry.id] {
            Ok(owner) => Ok(owner.as_ref()),
            Err(status) => Err(status.clone()),
        }
    }
}

/// The owner binding an entry's credentials carry, if it has an owner.
fn owner_binding(entry: &Entry) -> Result<Option<OwnerBinding>, Status> {
    entry
        .fields
        .owner
        .as_ref()
        .map(crate::owners::binding)
        .transpose()
        .map_err(|e| {
            tracing::error!(entry_id = %entry.id, error = %e, "stored owner binding is corrupt");
            Status::internal(format!("entry {}: {e}", entry.id))
        })
}

/// Why a workload's public JWK cannot be a WIT's `cnf.jwk`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
enum ConfirmationKeyError {
    #[error("not a JWK: {0}")]
    NotJwk(#[source] serde_json::Error),
    #[error("member \"alg\" is missing")]
    MissingAlg,
    #[error("alg {alg:?} is not allowed for WIT-SVIDs")]
    AlgNotAllowed { alg: String },
    #[error(transparent)]
    Key(#[from] workload_api::jwk::JwkError),
    #[error("alg {} does not fit a {kty} key", .alg.name())]
    AlgDoesNotFit {
        alg: workload_api::jwk::Algorithm,
        kty: String,
    },
    #[error("RSA modulus of {bits} bits is under 2048")]
    RsaTooShort { bits: usize },
}

/// A workload's public key for a WIT's `cnf.jwk`: a public JWK whose `alg`
/// the SPIFFE WIT-SVID profile allows and whose key fits it. Only the key's
/// own members and `alg` are kept.
fn confirmation_key(json: &str) -> Result<workload_api::jwk::Jwk, ConfirmationKeyError> {
    use workload_api::jwk::{Algorithm, Jwk, PublicKey};
    let jwk: Jwk = serde_json::from_str(json).map_err(ConfirmationKeyError::NotJwk)?;
    let alg_name = jwk.alg.as_deref().ok_or(ConfirmationKeyError::MissingAlg)?;
    let alg = Algorithm::from_name(alg_name)
        .filter(|a| a.is_spiffe())
        .ok_or_else(|| ConfirmationKeyError::AlgNotAllowed {
            alg: alg_name.to_owned(),
        })?;
    let key = PublicKey::from_jwk(&jwk)?;
    if !alg.fits(&key) {
        return Err(ConfirmationKeyError::AlgDoesNotFit { alg, kty: jwk.kty });
    }
    if let PublicKey::Rsa { n, .. } = &key {
        if n.len() < 256 {
            return Err(ConfirmationKeyError::RsaTooShort { bits: n.len() * 8 });
        }
    }
    Ok(Jwk {
        alg: Some(alg.name().into()),
        ..key.to_jwk()
    })
}
