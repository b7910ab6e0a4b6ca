//! Leaves: the records the tree hashes. A queued record is the canonical
//! JSON object `{"event": ...}` (agents' records add their signature);
//! the sequencer seals it into a leaf by adding `index` and `log_sig`, the
//! log key's Ed25519 signature over the origin and the record with its
//! index. The tree proves no leaf was added or removed since a checkpoint;
//! the per-leaf signature lets a verifier name the first altered, moved,
//! inserted or deleted leaf in an export, which a root alone cannot.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{Map, Value};
use workload_api::events::canonical::{self, CanonicalError};
use workload_api::events::signed::{self, AgentSigned, SignedEventError};
use workload_api::events::{Event, MAX_EVENT_BYTES};

use super::key::LogKey;

/// What a leaf's signature is domain-separated by.
const LEAF_CONTEXT: &[u8] = b"sigil event log leaf\n";

/// The longest leaf an entry bundle can frame.
pub const MAX_LEAF_BYTES: usize = u16::MAX as usize;

/// Why a record or leaf was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LeafError {
    #[error(transparent)]
    Canonical(#[from] CanonicalError),
    #[error("{0}")]
    Shape(String),
    #[error(
        "the leaf holds index {found}, not {expected}: an event was deleted, inserted or moved"
    )]
    Index { expected: u64, found: u64 },
    #[error("the log's signature does not verify: the leaf was altered")]
    Signature,
    #[error("the agent's signature does not verify")]
    AgentSignature,
    #[error("the leaf is {0} bytes; the most is {MAX_LEAF_BYTES}")]
    TooLarge(usize),
}

/// The queued record of an event the issuer itself witnessed:
/// `{"event": <canonical event>}`, canonical as it stands.
pub fn record(event: &Event) -> Result<String, LeafError> {
    let event = event
        .to_canonical()
        .map_err(|e| LeafError::Shape(e.to_string()))?;
    let mut record = String::with_capacity(event.len() + 10);
    record.push_str("{\"event\":");
    record.push_str(std::str::from_utf8(&event).expect("canonical JSON is UTF-8"));
    record.push('}');
    Ok(record)
}

fn signing_input(origin: &str, unsigned: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(LEAF_CONTEXT.len() + origin.len() + 1 + unsigned.len());
    input.extend_from_slice(LEAF_CONTEXT);
    input.extend_from_slice(origin.as_bytes());
    input.push(b'\n');
    input.extend_from_slice(unsigned);
    input
}

fn as_object(value: Value) -> Result<Map<String, Value>, LeafError> {
    match value {
        Value::Object(members) => Ok(members),
        _ => Err(LeafError::Shape("a leaf is a JSON object".into())),
    }
}

/// Appends `,"<name>":<value>}` to a canonical object missing its closing
/// brace: canonical still when `name` sorts after every member already in.
fn append_member(object: &mut String, name: &str, value: &str) {
    object.push_str(",\"");
    object.push_str(name);
    object.push_str("\":");
    object.push_str(value);
    object.push('}');
}

/// Seals a queued record as leaf `index`. Records are canonical objects
/// whose members (`agent_sig`, `event`) sort before `index` and `log_sig`,
/// so sealing appends the two members without parsing the record again.
pub fn seal(record: &str, index: u64, key: &LogKey) -> Result<String, LeafError> {
    let body = record
        .strip_suffix('}')
        .filter(|b| b.starts_with("{\"") && record.len() <= MAX_RECORD_BYTES)
        .ok_or_else(|| LeafError::Shape("a record is a JSON object".into()))?;
    let mut leaf = String::with_capacity(record.len() + 128);
    leaf.push_str(body);
    append_member(&mut leaf, "index", &index.to_string());
    let signature = key.sign_bytes(&signing_input(key.name(), leaf.as_bytes()));
    leaf.pop();
    let signature = format!("\"{}\"", URL_SAFE_NO_PAD.encode(signature));
    append_member(&mut leaf, "log_sig", &signature);
    if leaf.len() > MAX_LEAF_BYTES {
        return Err(LeafError::TooLarge(leaf.len()));
    }
    Ok(leaf)
}

/// A leaf read back and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    pub index: u64,
    pub event: Event,
    /// For events an agent signed: the signature, checked, with the agent's
    /// seq and key thumbprint.
    pub agent: Option<AgentSigned>,
}

/// Reads leaf bytes expected at `index` of the log `origin`, checking that
/// they are canonical, hold that index and carry the log's signature.
pub fn open(
    bytes: &[u8],
    expected: u64,
    origin: &str,
    verifier: &dyn signed_note::Verifier,
) -> Result<Leaf, LeafError> {
    if bytes.len() > MAX_LEAF_BYTES {
        return Err(LeafError::TooLarge(bytes.len()));
    }
    let mut members = as_object(canonical::parse_canonical(bytes)?)?;
    let found = members
        .get("index")
        .and_then(Value::as_u64)
        .ok_or_else(|| LeafError::Shape("the leaf has no index".into()))?;
    if found != expected {
        return Err(LeafError::Index { expected, found });
    }
    let signature = match members.remove("log_sig") {
        Some(Value::String(s)) => URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| LeafError::Shape("log_sig is not base64url".into()))?,
        _ => return Err(LeafError::Shape("the leaf has no log_sig".into())),
    };
    let unsigned = canonical::to_vec(&members)?;
    if !verifier.verify(&signing_input(origin, &unsigned), &signature) {
        return Err(LeafError::Signature);
    }
    members.remove("index");
    let (event, agent) = if members.contains_key("agent_sig") {
        let signed = signed::verify_members(&mut members).map_err(|e| match e {
            SignedEventError::Signature => LeafError::AgentSignature,
            other => LeafError::Shape(other.to_string()),
        })?;
        (signed.event.clone(), Some(signed))
    } else {
        let event = members
            .remove("event")
            .ok_or_else(|| LeafError::Shape("the leaf has no event".into()))?;
        let event = Event::from_value(event).map_err(|e| LeafError::Shape(e.to_string()))?;
        (event, None)
    };
    if let Some(name) = members.keys().next() {
        return Err(LeafError::Shape(format!("unknown leaf member {name:?}")));
    }
    Ok(Leaf {
        index: found,
        event,
        agent,
    })
}

/// Records larger than this cannot become leaves; appends refuse them.
pub const MAX_RECORD_BYTES: usize = MAX_EVENT_BYTES + 4096;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;
    use workload_api::events::EventKind;

    fn key() -> (tempfile::TempDir, LogKey) {
        let dir = tempfile::tempdir().unwrap();
        let key = LogKey::load_or_create(&dir.path().join("k.jwk"), "example.org/log").unwrap();
        (dir, key)
    }

    #[test]
    fn an_agent_record_seals_into_a_canonical_leaf() {
        let (_dir, key) = key();
        let verifier = signed_note::StandardVerifier::new(&key.verifier_key()).unwrap();
        let agent =
            workload_api::keypair::KeyPair::generate(workload_api::jwk::Algorithm::ES256).unwrap();
        let event = Event::new(
            EventKind::CredentialDelivered,
            "spiffe://example.org/agent/a",
            SystemTime::now(),
        );
        let record = signed::sign(&event, 3, &agent).unwrap();
        let leaf = seal(&record, 12, &key).unwrap();
        assert!(canonical::parse_canonical(leaf.as_bytes()).is_ok());
        let opened = open(leaf.as_bytes(), 12, "example.org/log", &verifier).unwrap();
        assert_eq!(opened.agent.unwrap().seq, 3);
    }

    #[test]
    fn a_sealed_leaf_opens_only_unaltered_at_its_index() {
        let (_dir, key) = key();
        let verifier = signed_note::StandardVerifier::new(&key.verifier_key()).unwrap();
        let event = Event::new(
            EventKind::EntryCreated,
            "spiffe://example.org/sigil/issuer",
            SystemTime::now(),
        )
        .subject("spiffe://example.org/web");
        let leaf = seal(&record(&event).unwrap(), 7, &key).unwrap();
        // Sealing appends to the record, and the leaf is canonical JSON.
        assert!(canonical::parse_canonical(leaf.as_bytes()).is_ok());
        let opened = open(leaf.as_bytes(), 7, "example.org/log", &verifier).unwrap();
        assert_eq!(opened.event, event);
        assert_eq!(
            open(leaf.as_bytes(), 6, "example.org/log", &verifier),
            Err(LeafError::Index {
                expected: 6,
                found: 7
            })
        );
        assert_eq!(
            open(leaf.as_bytes(), 7, "other.org/log", &verifier),
            Err(LeafError::Signature)
        );
        let altered = leaf.replace("spiffe://example.org/web", "spiffe://example.org/db");
        assert_eq!(
            open(altered.as_bytes(), 7, "example.org/log", &verifier),
            Err(LeafError::Signature)
        );
        let spaced = leaf.replacen(':', ": ", 1);
        assert!(matches!(
            open(spaced.as_bytes(), 7, "example.org/log", &verifier),
            Err(LeafError::Canonical(_))
        ));
    }
}
