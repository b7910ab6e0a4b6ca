//! The event record. Every event names its kind, time and actor (the issuer's
//! or an agent's SPIFFE ID); the subject, owner and credential handles
//! (serial, JWT ID, key thumbprint) where they apply; and kind-specific
//! details. An event never holds a key, a token or any other secret: only
//! identifiers by which an auditor can match it to a credential.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::canonical::{self, CanonicalError};

/// The largest canonical event: entry bundles frame entries with a 16-bit
/// length, and the leaf around an event adds its index and signatures.
pub const MAX_EVENT_BYTES: usize = 32 * 1024;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub enum EventKind {
    #[serde(rename = "node.attested")]
    NodeAttested,
    #[serde(rename = "agent.evicted")]
    AgentEvicted,
    #[serde(rename = "agent.banned")]
    AgentBanned,
    #[serde(rename = "entry.created")]
    EntryCreated,
    #[serde(rename = "entry.updated")]
    EntryUpdated,
    #[serde(rename = "entry.deleted")]
    EntryDeleted,
    #[serde(rename = "entry.delegated")]
    DelegatedEntryRegistered,
    #[serde(rename = "owner.registered")]
    OwnerRegistered,
    #[serde(rename = "owner.revoked")]
    OwnerRevoked,
    #[serde(rename = "consent.accepted")]
    ConsentAccepted,
    #[serde(rename = "x509_svid.issued")]
    X509SvidIssued,
    #[serde(rename = "jwt_svid.issued")]
    JwtSvidIssued,
    #[serde(rename = "wit.issued")]
    WitIssued,
    #[serde(rename = "key.prepared")]
    KeyPrepared,
    #[serde(rename = "key.activated")]
    KeyActivated,
    #[serde(rename = "key.retired")]
    KeyRetired,
    /// A replica signed the CRLs of its own X.509 authorities.
    #[serde(rename = "crl.published")]
    CrlPublished,
    /// The owners' revocation list was signed (by one replica at a time).
    #[serde(rename = "revocations.published")]
    RevocationsPublished,
    /// A federation relationship was created, changed or ended.
    #[serde(rename = "federation.created")]
    FederationCreated,
    #[serde(rename = "federation.updated")]
    FederationUpdated,
    #[serde(rename = "federation.deleted")]
    FederationDeleted,
    /// A foreign trust domain's bundle changed (fetched, set or bootstrapped).
    #[serde(rename = "foreign_bundle.updated")]
    ForeignBundleUpdated,
    /// A fetched foreign bundle was refused (older than the one held).
    #[serde(rename = "foreign_bundle.refused")]
    ForeignBundleRefused,
    #[serde(rename = "foreign_bundle.deleted")]
    ForeignBundleDeleted,
    /// An agent handed a credential to a workload process.
    #[serde(rename = "credential.delivered")]
    CredentialDelivered,
    /// A service accepted proofs or JWT-SVIDs from a sender (aggregated).
    #[serde(rename = "proof.verified")]
    ProofVerified,
    /// A service refused a proof or JWT-SVID.
    #[serde(rename = "proof.rejected")]
    ProofRejected,
}

impl EventKind {
    /// The name events carry in their `type` member.
    pub fn name(self) -> String {
        match serde_json::to_value(self) {
            Ok(Value::String(name)) => name,
            _ => unreachable!("every kind serializes to its name"),
        }
    }
}

/// One event. Optional members are left out when unset, so the canonical
/// form holds only what the event says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// RFC 3339, UTC, whole seconds.
    pub time: String,
    /// Who did it: the issuer's or an agent's SPIFFE ID.
    pub actor: String,
    /// Whom it concerns: the SPIFFE ID issued or served, the agent attested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The owner the subject's entry is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// An X.509 certificate's serial number, lower-case hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// A JWT's `jti`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// RFC 7638 thumbprint of a public key: the credential's or the key's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jkt: Option<String>,
    /// The registration entry concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_id: Option<String>,
    /// What else the kind records (selectors, audiences, expiry, counts).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, Value>,
}

/// Why bytes are not an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    #[error("event is {0} bytes; the most is {MAX_EVENT_BYTES}")]
    TooLarge(usize),
    #[error(transparent)]
    Canonical(#[from] CanonicalError),
    #[error("not an event: {0}")]
    Shape(String),
}

impl Event {
    /// An event of `kind` by `actor` at `at`, with nothing else set.
    pub fn new(kind: EventKind, actor: impl Into<String>, at: SystemTime) -> Self {
        Event {
            kind,
            time: humantime::format_rfc3339_seconds(at).to_string(),
            actor: actor.into(),
            subject: None,
            owner: None,
            serial: None,
            jti: None,
            jkt: None,
            entry_id: None,
            details: BTreeMap::new(),
        }
    }

    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Sets the owner unless `owner` is empty (no owner).
    pub fn owner(mut self, owner: &str) -> Self {
        self.owner = (!owner.is_empty()).then(|| owner.to_string());
        self
    }

    pub fn serial(mut self, serial: impl Into<String>) -> Self {
        self.serial = Some(serial.into());
        self
    }

    pub fn jti(mut self, jti: impl Into<String>) -> Self {
        self.jti = Some(jti.into());
        self
    }

    pub fn jkt(mut self, jkt: impl Into<String>) -> Self {
        self.jkt = Some(jkt.into());
        self
    }

    pub fn entry(mut self, entry_id: impl Into<String>) -> Self {
        self.entry_id = Some(entry_id.into());
        self
    }

    /// Adds a detail. Values must be canonical-JSON safe (strings,
    /// integers, booleans, arrays and objects of those).
    pub fn detail(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.details.insert(name.to_string(), value.into());
        self
    }

    /// Adds a list of strings an outsider controls (selectors, audiences)
    /// within a fixed bound: `name` holds each value cut to
    /// [`crate::display::SHOWN_BYTES`], and `<name>_sha256` the SHA-256 (hex)
    /// of the canonical form of the whole list, so the event stays small
    /// and still pins the exact values.
    pub fn bounded_list(self, name: &str, values: &[String]) -> Self {
        let full = canonical::to_vec(&values).expect("a list of strings is canonical");
        let digest = ring::digest::digest(&ring::digest::SHA256, &full);
        let shown: Vec<String> = values.iter().map(|v| crate::display::shown(v)).collect();
        self.detail(name, shown)
            .detail(&format!("{name}_sha256"), hex_lower(digest.as_ref()))
    }

    /// The event's canonical bytes, refused when over [`MAX_EVENT_BYTES`].
    pub fn to_canonical(&self) -> Result<Vec<u8>, EventError> {
        let bytes = canonical::to_vec(self)?;
        if bytes.len() > MAX_EVENT_BYTES {
            return Err(EventError::TooLarge(bytes.len()));
        }
        Ok(bytes)
    }

    /// Reads an event from its JSON value.
    pub fn from_value(value: Value) -> Result<Self, EventError> {
        serde_json::from_value(value).map_err(|e| EventError::Shape(e.to_string()))
    }

    /// The event's time in Unix seconds, if it parses.
    pub fn unix_time(&self) -> Option<i64> {
        let at = humantime::parse_rfc3339(&self.time).ok()?;
        let secs = at.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs();
        i64::try_from(secs).ok()
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn events_have_one_canonical_form_without_unset_members() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        let event = Event::new(
            EventKind::X509SvidIssued,
            "spiffe://example.org/sigil/issuer",
            at,
        )
        .subject("spiffe://example.org/web")
        .owner("")
        .serial("0a1b")
        .detail("expires_at", 1_790_003_600_i64);
        let bytes = event.to_canonical().unwrap();
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            r#"{"actor":"spiffe://example.org/sigil/issuer","details":{"expires_at":1790003600},"serial":"0a1b","subject":"spiffe://example.org/web","time":"2026-09-21T14:13:20Z","type":"x509_svid.issued"}"#
        );
        let back = Event::from_value(canonical::parse_canonical(&bytes).unwrap()).unwrap();
        assert_eq!(back, event);
        assert_eq!(back.unix_time(), Some(1_790_000_000));
    }

    #[test]
    fn outsider_lists_stay_small_and_pinned() {
        let values: Vec<String> = (0..64)
            .map(|i| format!("unix:{i}:{}", "\u{1}".repeat(1024)))
            .collect();
        let event = Event::new(EventKind::EntryCreated, "a", SystemTime::UNIX_EPOCH)
            .bounded_list("selectors", &values);
        assert!(event.to_canonical().unwrap().len() < 16 * 1024);
        let other = Event::new(EventKind::EntryCreated, "a", SystemTime::UNIX_EPOCH)
            .bounded_list("selectors", &values[1..]);
        assert_ne!(
            event.details["selectors_sha256"],
            other.details["selectors_sha256"]
        );
    }

    #[test]
    fn oversized_and_unknown_events_are_refused() {
        let big = Event::new(EventKind::EntryCreated, "a", SystemTime::UNIX_EPOCH)
            .detail("x", "y".repeat(MAX_EVENT_BYTES));
        assert!(matches!(big.to_canonical(), Err(EventError::TooLarge(_))));
        let unknown = serde_json::json!({"type": "nope", "time": "x", "actor": "a"});
        assert!(Event::from_value(unknown).is_err());
        let extra =
            serde_json::json!({"type": "entry.created", "time": "x", "actor": "a", "key": "k"});
        assert!(Event::from_value(extra).is_err());
    }
}
