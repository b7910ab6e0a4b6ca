//! Events an agent signs with its own key (the key of its X509-SVID), so
//! the issuer that logs them cannot rewrite them. The record is canonical
//! JSON `{"agent_sig": {"alg", "jwk", "seq", "sig"}, "event": ...}`:
//! `seq` numbers the agent's events from 1 with no gaps, so the issuer
//! takes each once however often it is resent, and `sig` (base64url, JWS
//! form) covers `"sigil agent event\n" || canonical({"event", "seq"})`. An
//! auditor checks `sig` with `jwk`, and that `jwk`'s thumbprint is a key
//! the log recorded as issued to the event's actor.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::canonical::{self, CanonicalError};
use super::event::{Event, EventError};
use crate::jwk::{Algorithm, Jwk, PublicKey};
use crate::keypair::KeyPair;

/// What an agent's signature is domain-separated by.
const AGENT_CONTEXT: &[u8] = b"sigil agent event\n";

/// Why a signed record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignedEventError {
    #[error(transparent)]
    Canonical(#[from] CanonicalError),
    #[error(transparent)]
    Event(#[from] EventError),
    #[error("agent event: {0}")]
    Shape(String),
    #[error("the agent's signature does not verify")]
    Signature,
}

/// A signed record, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSigned {
    pub event: Event,
    pub seq: u64,
    /// The signing key, and its RFC 7638 thumbprint.
    pub key: PublicKey,
    pub jkt: String,
}

fn signing_input(event: &Value, seq: u64) -> Result<Vec<u8>, CanonicalError> {
    let mut input = AGENT_CONTEXT.to_vec();
    input.extend(canonical::to_vec(&json!({ "event": event, "seq": seq }))?);
    Ok(input)
}

/// Signs `event` as the agent's `seq`th with `key`.
pub fn sign(event: &Event, seq: u64, key: &KeyPair) -> Result<String, SignedEventError> {
    let event_value: Value = serde_json::from_slice(&event.to_canonical()?)
        .map_err(|e| SignedEventError::Shape(e.to_string()))?;
    let signature = key.sign(&signing_input(&event_value, seq)?);
    let record = json!({
        "agent_sig": {
            "alg": key.algorithm().name(),
            "jwk": key.public_jwk(),
            "seq": seq,
            "sig": URL_SAFE_NO_PAD.encode(signature),
        },
        "event": event_value,
    });
    Ok(String::from_utf8(canonical::to_vec(&record)?).expect("canonical JSON is UTF-8"))
}

fn shape(reason: impl Into<String>) -> SignedEventError {
    SignedEventError::Shape(reason.into())
}

/// Checks a record's members: `agent_sig` and `event` are taken out of
/// `members` (whatever else it holds is the caller's to judge).
pub fn verify_members(members: &mut Map<String, Value>) -> Result<AgentSigned, SignedEventError> {
    let event_value = members
        .remove("event")
        .ok_or_else(|| shape("event is missing"))?;
    let Some(Value::Object(mut sig)) = members.remove("agent_sig") else {
        return Err(shape("agent_sig is missing"));
    };
    let seq = sig
        .remove("seq")
        .and_then(|s| s.as_u64())
        .filter(|s| *s > 0)
        .ok_or_else(|| shape("agent_sig.seq is missing or not a positive integer"))?;
    let alg = sig
        .remove("alg")
        .and_then(|a| a.as_str().and_then(Algorithm::from_name))
        .ok_or_else(|| shape("agent_sig.alg is missing or unknown"))?;
    let jwk: Jwk = sig
        .remove("jwk")
        .and_then(|j| serde_json::from_value(j).ok())
        .ok_or_else(|| shape("agent_sig.jwk is missing or not a JWK"))?;
    let key = PublicKey::from_jwk(&jwk).map_err(|e| shape(format!("agent_sig.jwk: {e}")))?;
    let signature = sig
        .remove("sig")
        .and_then(|s| s.as_str().and_then(|s| URL_SAFE_NO_PAD.decode(s).ok()))
        .ok_or_else(|| shape("agent_sig.sig is missing or not base64url"))?;
    if let Some(name) = sig.keys().next() {
        return Err(shape(format!("unknown agent_sig member {name:?}")));
    }
    if !key.verify(alg, &signing_input(&event_value, seq)?, &signature) {
        return Err(SignedEventError::Signature);
    }
    let event = Event::from_value(event_value)?;
    Ok(AgentSigned {
        event,
        seq,
        jkt: key.thumbprint(),
        key,
    })
}

/// Checks a whole record as an agent sends it.
pub fn verify(record: &[u8]) -> Result<AgentSigned, SignedEventError> {
    let Value::Object(mut members) = canonical::parse_canonical(record)? else {
        return Err(shape("a record is a JSON object"));
    };
    let signed = verify_members(&mut members)?;
    if let Some(name) = members.keys().next() {
        return Err(shape(format!("unknown member {name:?}")));
    }
    Ok(signed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventKind;
    use std::time::SystemTime;

    #[test]
    fn a_signed_record_verifies_only_unaltered() {
        let key = KeyPair::generate(Algorithm::ES256).unwrap();
        let event = Event::new(
            EventKind::CredentialDelivered,
            "spiffe://example.org/agent/join_token/x",
            SystemTime::now(),
        )
        .subject("spiffe://example.org/web")
        .serial("0a");
        let record = sign(&event, 7, &key).unwrap();
        let checked = verify(record.as_bytes()).unwrap();
        assert_eq!((checked.event, checked.seq), (event, 7));
        assert_eq!(checked.jkt, key.public_key().thumbprint());
        let altered = record.replace("/web", "/db");
        assert_eq!(verify(altered.as_bytes()), Err(SignedEventError::Signature));
        let reseq = record.replace("\"seq\":7", "\"seq\":8");
        assert_eq!(verify(reseq.as_bytes()), Err(SignedEventError::Signature));
        assert!(verify(b"{}").is_err());
    }
}
